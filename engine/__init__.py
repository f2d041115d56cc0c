"""avatarcast engine: a headless runtime that runs a graph of nodes over video frames.

The engine knows nothing about faces. It owns the node contract (ports, params), preset loading,
graph building, frame memory, the live and offline runtimes, sources, sinks, the command bus and
the CLI. Effects live in the `nodes` package; OBS glue lives in `obs_plugin`.
"""

__version__ = "0.1.0"
