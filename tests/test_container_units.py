"""The parts of `cogkit build` that need no engine: what the Dockerfile says, what the wheelhouse asks for."""

from pathlib import Path

from cogkit.image_build import concurrency, default_tag, dockerfile
from cogkit.ship.config import compose
from cogkit.weights import project_root
from cogkit.wheelhouse import torch_requirement

ROOT = project_root()


def test_dockerfile_orders_layers_and_carries_cogs_runtime_settings():
    text = dockerfile("cogkit/base:bookworm", "cogkit-deps-llm:cpu", "predict.py:LLMRunner", snapshot=True,
                      concurrency_max=4, gpu=False, environment=["COGKIT_MODEL=llm"])
    order = [text.index(step) for step in ("COPY --from=cogkit-deps-llm:cpu /opt/venv", "COPY weights",
                                           "COPY src", "python -m cogkit.boot_once predict.py:LLMRunner")]
    assert order == sorted(order)  # dependencies, weights, code, snapshot: a code change keeps the first two
    assert 'ENV COGKIT_MODEL="llm"' in text and text.index("COGKIT_MODEL") < text.index("boot_once")
    assert "COG_MAX_CONCURRENCY=4" in text and 'COG_PREDICT_TYPE_STUB="predict.py:LLMRunner"' in text
    assert 'ENTRYPOINT ["tini", "--"]' in text and "EXPOSE 5000" in text
    no_snapshot = dockerfile("b", "d", "predict.py:TTSRunner", snapshot=False, concurrency_max=None, gpu=False)
    assert "boot_once" not in no_snapshot and "COG_MAX_CONCURRENCY" not in no_snapshot


def test_concurrency_comes_from_the_overlays_concurrency_max():
    assert concurrency({"concurrency": {"max": 8}}) == 8
    assert concurrency({}) is None
    for model in ("llm", "tts"):
        config = compose(model, ROOT).config
        assert concurrency(config) == (config.get("concurrency") or {}).get("max")


def test_cpu_images_get_torchs_cpu_wheel_and_gpu_images_pypis_build():
    llm = ROOT / "requirements" / "llm.txt"
    assert torch_requirement(llm, gpu=False) == "torch==2.13.0+cpu"
    assert torch_requirement(llm, gpu=True) == "torch==2.13.0"
    assert torch_requirement(ROOT / "requirements" / "tts.txt", gpu=False) is None
    assert default_tag("llm", gpu=False, config_gpu=True) == "cogkit-llm:cpu"
    assert default_tag("tts", gpu=False, config_gpu=False) == "cogkit-tts:latest"
    assert Path(ROOT / "scripts" / "make-base-image.sh").stat().st_mode & 0o111
