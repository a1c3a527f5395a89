"""The orchestration engine: noderole states, the dependency graph, attribute merging, the annealer."""
