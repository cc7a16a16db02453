"""Python imports this module at the start of each process whose PYTHONPATH names this folder: the
model server's two processes (coglet's server and its worker), which cogkit starts with it
(cogkit/server.py, the container image from cogkit/image_build.py). Both import cog's SDK before any
code of ours runs; importing it here first leaves out what it imports for URL inputs only, until a
request needs it (cogkit/deferred_imports.py)."""

from cogkit.deferred_imports import import_cog

import_cog()
