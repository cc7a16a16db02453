"""What a typical predict.py for this LLM does at every boot, for `cogkit bench boot` variant (a):
transformers' `from_pretrained` on the source checkpoint (here the GGUF file, dequantised on each
boot), torch.compile on GPU, a warm-up generation, and `TextIteratorStreamer` for streaming.
"""

import os
import threading
from pathlib import Path

from cog import BaseRunner, ConcatenateIterator, Input


class NaiveLLMRunner(BaseRunner):
    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = Path(os.environ["COGKIT_SOURCE_PATH"])
        kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
        folder = source.parent if source.suffix == ".gguf" else source
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).to(self.device).eval()
        if self.device == "cuda":
            self.model.forward = torch.compile(self.model.forward)
        self._generate("Hello! Who are you?", 8, None)  # warm-up

    def _generate(self, prompt, max_new_tokens, streamer):
        messages = [{"role": "user", "content": prompt}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True).to(self.device)
        return self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)

    def run(
        self,
        prompt: str = Input(description="Text prompt to send to the model."),
        max_new_tokens: int = Input(description="Maximum number of tokens to generate.", default=128, ge=1, le=4096),
        temperature: float = Input(description="Only greedy decoding (0) is implemented here.", default=0.0, ge=0.0, le=0.0),
    ) -> ConcatenateIterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
        failure = []

        def work():
            try:
                self._generate(prompt, max_new_tokens, streamer)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=work)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if failure:
            raise failure[0]
