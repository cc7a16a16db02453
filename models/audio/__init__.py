"""Speech models: Whisper speech-to-text (whisper.py builds, whisper_runtime.py runs it on faster-whisper)
and text-to-speech (tts.py: Piper or transformers VITS), their boot snapshots, audio file I/O,
subtitles, the bundled test clip and the naive predictors `cogkit bench boot` compares against.
Importing the package is cheap: each module imports its engine itself."""
