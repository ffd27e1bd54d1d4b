"""Writes the data set beside it (`tiny/1.0.0/`) with TensorFlow Datasets itself, as `tfds.load` prepares one: two
TFRecord shards of the train split and one of the test split, with the `dataset_info.json`, `features.json` and
`label.labels.txt` TFDS keeps beside them, so that their reading (`pipeline.sources.tfds_metadata`, the counts of
`tfrecord_count`) is checked against files it did not help to write. TFDS is not one of the project's dependencies:
the files are committed, and this script says how they were made (TensorFlow 2.21.0 and tensorflow-datasets 4.9.10,
`pip install tensorflow-cpu tensorflow-datasets`, then `python tests/data/tfds/make_fixtures.py`).

Its features are those whose values a record holds one of in some records and several of in others (a Sequence of
integers, of class labels, of text; objects of a bounding box and a label each), beside those of one value (an
Image, a ClassLabel, a Text, a Tensor of shape [] and of shape [1]) and a Tensor of shape [2]. Record i holds
1 + i % 3 values of each Sequence."""

import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

HERE = pathlib.Path(__file__).parent


class Tiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=["cat", "dog", "fox"]),
            "caption": tfds.features.Text(),
            "tokens": tfds.features.Sequence(tf.int64),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=5)),
            "words": tfds.features.Sequence(tfds.features.Text()),
            "pair": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "one": tfds.features.Tensor(shape=(1,), dtype=np.int64),
            "score": tfds.features.Tensor(shape=(), dtype=np.float32),
            "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(),
                                               "label": tfds.features.ClassLabel(num_classes=4)}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 8), "test": self._generate_examples(100, 103)}

    def _generate_examples(self, start: int, end: int):
        for i in range(start, end):
            k = 1 + i % 3
            pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            yield i, {"image": pixels, "label": i % 3, "caption": f"picture {i}", "tokens": list(range(i, i + k)),
                      "labels": [(i + j) % 5 for j in range(k)], "words": [f"w{j}" for j in range(k)],
                      "pair": np.array([i, i + 0.5], np.float32), "one": np.array([i]), "score": float(i) / 4,
                      "objects": {"bbox": np.array([[0.125, 0.25, 0.5, 0.75]] * k, np.float32), "label": [1] * k}}


def main() -> None:
    out = HERE / "tiny" / "1.0.0"
    with tempfile.TemporaryDirectory() as tmp:
        Tiny(data_dir=tmp).download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=2))
        shutil.rmtree(HERE / "tiny", ignore_errors=True)
        shutil.copytree(pathlib.Path(tmp) / "tiny" / "1.0.0", out)
    print(f"TensorFlow {tf.__version__}, tensorflow-datasets {tfds.__version__}: wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
