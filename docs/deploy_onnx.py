# Embed chips with an exported Clay ONNX file, with onnxruntime and numpy only (no torch, no clay_hf):
#   python deploy_onnx.py clay.onnx chips.npy embeddings.npy

import json
import sys

import numpy as np
import onnxruntime as ort

model, chips, out = sys.argv[1:4]
info = json.load(open(model + ".json"))  # written beside the file by scripts/export.py
x = np.load(chips).astype(np.float32)  # raw values (B, C, H, W), bands in info["band_names"] order
mean, std = (np.array(info[k], np.float32)[:, None, None] for k in ("mean", "std"))
zeros = np.zeros((len(x), 4), np.float32)  # time and latlon unknown
waves, gsd = np.array(info["wavelengths"], np.float32), np.full(len(x), info["gsd"], np.float32)
feed = dict(pixel_values=(x - mean) / std, wavelengths=waves, gsd=gsd, time=zeros, latlon=zeros)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
np.save(out, session.run(["pooler_output"], feed)[0])  # (B, D): one embedding per chip
