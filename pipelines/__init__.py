"""Runs wired end to end: config -> data -> features -> model -> fit -> evaluate -> track."""
