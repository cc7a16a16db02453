"""Shipping a model to Replicate: commands.py (`cogkit select|check|push` and the checks a push runs),
config.py (cog.yaml composed from models/cog/base.yaml and the model's overlay), examples.py (the
declared example predictions, run through the real server), compat.py (does the new schema break
callers of the last push), push_image.py (build + registry push without the Cog CLI), login.py
(`cogkit login` for r8.im). Importing the package is cheap."""
