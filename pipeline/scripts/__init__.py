"""Customer scripts as deployed versions: the registry on a compacted topic."""
