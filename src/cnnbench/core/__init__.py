"""The core every command stands on: configuration (config), errors, the machine (environment), device,
precision and memory format (placement), the measured loop (timing) and its statistics (stats), records and
their store (results), what a person sees (terminal), memory advice, telemetry and efficiency.

Nothing here imports a backend, an engine, a recipe or a tool.
"""
