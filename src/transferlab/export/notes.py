"""preprocess.json: what a deployer does before and after the model, as numbers and formulas a
client can reproduce exactly, with a test vector to check itself against."""

from __future__ import annotations

from transferlab.export.graphs import INPUT, OUTPUT


PIXELS = ("8-bit RGB, channels in the order R, G, B. Other modes first become RGB as Pillow's "
          "Image.convert('RGB') does, except: a palette image with transparency goes through RGBA, "
          "and a 16-bit greyscale image is divided by 257 and rounded to 8 bits. Then each value "
          "v (0..255) becomes (v / 255 - mean[c]) / std[c] for channel c, as float32")
STEPS = ["decode the image and make it 8-bit RGB (pixels)", "resize (resize)",
         "crop, where resize says so (resize)", "to float32 and normalise (pixels)",
         "as a (3, height, width) array, channels first; stack a batch on a first axis (input)"]


def test_vector(predictor, image, path) -> dict:
    """The record a client checks itself against: a generated image stored beside the model, the
    input tensor it becomes (its shape, sum, mean, std and first values) and the model's output."""
    import torch

    image.save(path)
    x = predictor.transform()(image)
    with torch.inference_mode():
        output = predictor.module.predict_step(x[None], 0).float()[0]
    flat = x.flatten().double()
    return {
        "image": path.name, "image_size": [image.height, image.width],
        "input": {"shape": list(x.shape), "sum": float(flat.sum()), "mean": float(flat.mean()),
                  "std": float(flat.std()), "first": [float(v) for v in flat[:8]]},
        "output": {"shape": list(output.shape),
                   "values": [float(v) for v in output.flatten()[:64]],
                   "sum": float(output.double().sum())},
        "check": "a client that follows these steps on this image gets this input within 1e-5 "
                 "(float32 arithmetic) and, running the model on it, this output within 1e-5",
    }


def raw_notes(predictor, file: str) -> dict:
    """preprocess.json's words on the model that takes raw images (`preprocess=inside`)."""
    return {
        "file": file, "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC",
                                "shape": ["batch", "height", "width", 3],
                                "meaning": "8-bit RGB images as a decoder gives them, any height "
                                           "and width, one size per batch"},
        "inside": "the resize and crop (torch's antialiased bilinear: within about 1/255 of "
                  "Pillow's), the float conversion and the normalisation above",
        "output": "as the output above",
    }


def deploy_notes(predictor, fmt: str, file: str, opset: int | None) -> dict:
    """preprocess.json: the eval transform in words and numbers (the task's), and what goes in
    and comes out of the model."""
    import torch

    pre, task = predictor.preprocess, predictor.task
    size, names = int(pre["image_size"]), predictor.class_names
    resize = task.describe_resize(pre)
    resize["interpolation"] = ("Pillow's Image.resize((width, height), resample=Image.BILINEAR) on the "
                               "8-bit RGB image, whose filter widens with the reduction (antialiased); "
                               "the resized image is 8-bit again before it becomes floats")
    spatial = ["height", "width"] if task.dense else [size, size]
    output = task.output_notes(names, size)
    notes = {
        "task": task.name,
        "image_size": size,
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "class_names": names,
        "resize": resize,
        "pixels": PIXELS,
        "steps": STEPS,
        "input": {
            "name": INPUT if fmt == "onnx" else "the model's one argument",
            "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *spatial],
            "batch": "any size",
        },
        "output": {
            "name": OUTPUT if fmt == "onnx" else "the model's return value",
            "dtype": "float32",
            "shape": ["batch", len(names), *(spatial if task.dense else [])],
            "meaning": output["meaning"],
        },
        "model": {"format": fmt, "file": file, "checkpoint": predictor.checkpoint.name,
                  "torch": torch.__version__.split("+")[0]},
        "postprocess": output["postprocess"],
    }
    if fmt == "onnx":
        notes["model"]["opset"] = opset
    if task.dense:
        multiple = predictor.module.backbone.pads_to
        padding = (f"the network zero-pads height and width to multiples of {multiple} (bottom, "
                   "right) and crops its output back" if multiple else "the network keeps it")
        notes["input"]["height_width"] = (
            f"any size; {padding}, so the output has the input's height and width. The eval "
            f"transform (what validation saw) gives {size}x{size}"
        )
    return notes


