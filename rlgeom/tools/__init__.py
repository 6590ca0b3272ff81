"""The tools behind the command lines: train (and the grid runner, benchmark), compare, landscape."""
