"""Text generation with Llama-style decoders: llama.py (the network), families.py (what differs between
Llama, Mistral, Qwen2/2.5 and Qwen3), build.py (`cogkit build-weights llm`), text_generation.py and
engine.py (the runtime: tokenise, sample, stream; continuous batching), chat_template.py and
chat_messages.py (the checkpoint's chat template, the `messages` input), naive.py (the predictor
`cogkit bench boot` compares against). Importing the package is cheap: each module imports torch itself."""
