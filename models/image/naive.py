"""The image predictor as a typical predict.py writes it, for `cogkit bench boot image` variant (a): at
every boot `from_pretrained` on the source pipeline folder (env COGKIT_SOURCE_PATH), cast to the runtime
dtype; on GPU the same optimisations and torch.compile as cogkit's (so outputs agree), from an empty
compile cache as in a fresh container; a warm-up picture. No pre-built weights, no snapshot.
Same inputs and outputs as predict.py:ImageRunner."""

import os
import tempfile

from predict import ImageRunner, SetupTimer, device, logged_setup


class NaiveImageRunner(ImageRunner):
    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        import torch

        from models.image.build import compiles_unet, runtime_dtype
        from models.image.generation import ImageGenerator, ImageRequest, import_runtime, load_pipeline

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        import_runtime()
        timer.done("imports")
        dev = device()
        dtype = runtime_dtype()
        self.images = ImageGenerator(load_pipeline(os.environ["COGKIT_SOURCE_PATH"], dev, dtype), dev)
        timer.done("load")
        compile_unet = compiles_unet(dev)
        if compile_unet:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="naive-inductor-")
        self.images.optimise(compile_unet)
        self.images.generate(ImageRequest(prompt="warm-up", num_inference_steps=1, seed=0))
        timer.done("compile" if compile_unet else "warmup")
        self.setup_phases = timer.phases
