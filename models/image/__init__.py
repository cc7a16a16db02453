"""Text-to-image and image-to-image with diffusers: build.py converts a pipeline (`cogkit build-weights
image`), generation.py runs it, fastpath.py is the recorded diffusers-free CPU path, snapshot.py what
the boot snapshot holds, naive.py the predictor `cogkit bench boot` compares against.
Importing the package is cheap: each module imports its engine itself."""
