"""Face-image operations without torch, so the deployment path (onnxruntime) can use them: photo reading,
detection and face choice, alignment, known damage, lists of aligned faces."""
