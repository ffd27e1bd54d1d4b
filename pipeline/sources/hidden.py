"""Hidden entries: a name or folder starting with '.' or '_' is skipped, in a folder's listing and in a zip archive,
and counted (`HiddenSkipped`), so that a run can say what it left out (`hidden_note`)."""

from __future__ import annotations

from pipeline.sources.export_manifests import is_export_manifest_name
from pipeline.sources.folder_metadata import is_folder_metadata
from pipeline.sources.ids import terminal_text
from pipeline.sources.tfrecord_files import TFDS_FILES, is_tfds_metadata_name


def is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


HIDDEN_EXAMPLES = 10  # names of hidden entries a run's summary shows (its count is of all of them)


class HiddenSkipped:
    """Hidden entries (`is_hidden`: a name or folder starting with '.' or '_') left out of a run: how many, and the
    first few names. Counted so that an input whose images all lie under such a name (a mislabelled `_train/`)
    does not end as "0 read" with no hint."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.examples) < HIDDEN_EXAMPLES:
            self.examples.append(name)


def hidden_note(count: int, examples: list[str]) -> str:
    """What a run says of the hidden entries it skipped: a mislabelled folder (`_train/`) is otherwise invisible. The
    listing counts a saved Hugging Face or TFDS data set's metadata files (`arrow_ipc.saved_dataset_metadata`,
    `tfrecord_files.tfds_metadata`), an export's manifest (`export_manifests`) and the image
    folders' metadata files it joined (`folder_metadata`) with them, first among the examples: named so where they are."""
    shown = ", ".join(terminal_text(name) for name in examples[:3]) + (", ..." if count > 3 else "")
    which = "names starting with . or _"
    metadata = [name for name in examples if not is_hidden(name)]
    data_sets = [name for name in metadata if not is_folder_metadata(name) and not is_export_manifest_name(name)]
    # dataset_info.json is both's: a TFDS data set is told by its features.json or a .labels.txt
    tfds = any(is_tfds_metadata_name(name) and not name.endswith(TFDS_FILES[0]) for name in data_sets)
    if any(name.endswith(("/state.json", "/dataset_dict.json")) or name in ("state.json", "dataset_dict.json")
           for name in data_sets) or (data_sets and not tfds):
        which += "; a saved Hugging Face data set's metadata: dataset_info.json, state.json, dataset_dict.json"
    if tfds:
        which += "; a TFDS data set's metadata: dataset_info.json, features.json, *.labels.txt"
    if any(is_export_manifest_name(name) for name in metadata):  # told by its header at the listing
        which += "; an export's manifest.csv / manifest.jsonl (jobs/export.py), which lists the images beside it"
    if any(is_folder_metadata(name) for name in metadata):  # --join-metadata: read at the listing, not an input
        which += "; an image folder's metadata.csv / metadata.jsonl, joined to its images' rows"
    return f"{count:,} hidden entr{'y' if count == 1 else 'ies'} ({which}) skipped, not read: {shown}"
