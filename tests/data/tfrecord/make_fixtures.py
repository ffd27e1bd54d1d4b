"""Writes the TFRecord files beside it with TensorFlow itself (`tf.io.TFRecordWriter`, `tf.train.Example`), so that the
reader (`pipeline.sources.tfrecord_files`) is checked against files it did not help to write. TensorFlow is not one of
the project's dependencies: the files are committed, and this script says how they were made (TensorFlow 2.21.0,
`pip install tensorflow-cpu`, then `python tests/data/tfrecord/make_fixtures.py`). `expected.json` lists what each
record holds, written from the same values."""

import io
import json
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image

HERE = pathlib.Path(__file__).parent


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def records() -> list[tuple[tf.train.Example, dict]]:
    out = []
    for i in range(3):
        image = png(i)
        features = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
            "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i * 7 - 3])),
            "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25, 0.5][: i + 1])),
            "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"img_{i}.png".encode()])),
        }
        expected = {"label": i * 7 - 3, "xmin": [0.25, 0.5][: i + 1], "filename": f"img_{i}.png", "format": "png",
                    "image_sha256": __import__("hashlib").sha256(image).hexdigest()}
        out.append((tf.train.Example(features=tf.train.Features(feature=features)), expected))
    return out


def main() -> None:
    made = records()
    for name, compression in (("plain.tfrecord", None), ("gzip.tfrecord.gz", "GZIP"), ("zlib.tfrecord", "ZLIB")):
        options = tf.io.TFRecordOptions(compression_type=compression) if compression else None
        with tf.io.TFRecordWriter(str(HERE / name), options=options) as writer:
            for example, _ in made:
                writer.write(example.SerializeToString())
    (HERE / "expected.json").write_text(json.dumps([e for _, e in made], indent=1) + "\n")
    print(f"TensorFlow {tf.__version__}: wrote {len(made)} records to each of 3 files")


if __name__ == "__main__":
    main()
