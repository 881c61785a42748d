"""PyTorch, the default backend: its data-parallel worker (distributed) and the launcher that starts one."""
