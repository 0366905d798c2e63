"""Offline analysis of rlscope runs."""
