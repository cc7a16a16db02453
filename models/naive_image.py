"""The image predictor as a typical predict.py writes it, for `cogkit bench boot image`: at every boot,
`from_pretrained` on the source pipeline folder (env COGKIT_SOURCE_PATH), cast to the runtime dtype,
no pre-built weights and no snapshot. Same inputs and outputs as predict.py:ImageRunner."""

import os

from predict import ImageRunner, SetupTimer, device, logged_setup


class NaiveImageRunner(ImageRunner):
    @logged_setup
    def setup(self) -> None:
        timer = SetupTimer()
        import torch

        from models.image import runtime_dtype
        from models.image_generation import ImageGenerator, import_runtime, load_pipeline

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        import_runtime()
        timer.done("imports")
        source = os.environ["COGKIT_SOURCE_PATH"]
        self.images = ImageGenerator(load_pipeline(source, device(), runtime_dtype()), device())
        timer.done("load")
        self.setup_phases = timer.phases
