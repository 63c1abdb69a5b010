"""All SQL lives in this package: handlers call these functions, never write SQL themselves."""
