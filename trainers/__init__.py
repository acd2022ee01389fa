"""Lightning training of flow heads F_φ on harvested trajectories."""
