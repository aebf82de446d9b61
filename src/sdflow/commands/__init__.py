"""Sub-commands of the `sdflow` command line; see `sdflow.cli`."""
