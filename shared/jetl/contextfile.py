"""Where a stack context is kept: the file `jetl up` writes to its data folder, and the folder a command looks for
in the current one or a parent (`jetl.context` finds it, `jetl.stackcontext` writes it)."""

CONTEXT_FILE = "context.json"
DEFAULT_DIR = ".jetl"
