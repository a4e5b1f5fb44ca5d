"""The MemAE anomaly-detection application built on the fused memory: models/, data/, and the
training loop (train.py), evaluation (evaluate.py), run settings (presets.py), the
`memae-fused` command (cli.py) and the README's main job (demo.py). docs/architecture.md maps
the path from data to results."""
