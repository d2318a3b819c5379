"""Analyses of logged data: exploration efficiency and action distributions."""
