"""prepare_dataset / prepare_corruption_set: write data/<name>/ from the data set's config entry."""

import json
from pathlib import Path

from stirflow.data import PHOTO_CLASSES, SHAPE_CLASSES, make_digits, make_photo_crops, make_shapes, write_image_h5
from stirflow.workflow import log, run_script


def main(sm):
    name, spec = sm.params.name, dict(sm.params.spec)
    kind = spec["kind"]
    out_dir = Path(sm.output[0]).parent
    if kind == "shapes":
        for split, n, offset in (("train", spec.get("n_train", 6000), 0), ("test", spec.get("n_test", 1000), 1)):
            seed = spec.get("seed", 0) * 2 + offset  # disjoint draws for train and test
            images, labels = make_shapes(n, spec.get("image_size", 16), seed)
            write_image_h5(out_dir / f"{split}.h5", images, labels, name=name, split=split, source="stirflow.data.make_shapes",
                           seed=seed, num_classes=10, classes=list(SHAPE_CLASSES))
            log.info("%s/%s: %d images", name, split, n)
        return
    if kind == "digits":
        splits = make_digits(spec.get("image_size", 16), spec.get("test_fraction", 0.25), spec.get("seed", 0))
        for split, (images, labels) in splits.items():
            write_image_h5(out_dir / f"{split}.h5", images, labels, name=name, split=split,
                           source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
                           seed=spec.get("seed", 0), num_classes=10, classes=[str(d) for d in range(10)])
            log.info("%s/%s: %d images", name, split, len(labels))
        return
    if kind == "photos":
        splits = make_photo_crops(spec.get("n_train", 4000), spec.get("n_test", 1000), spec.get("image_size", 32),
                                  spec.get("seed", 0))
        for split, (images, labels) in splits.items():
            write_image_h5(out_dir / f"{split}.h5", images, labels, name=name, split=split,
                           source="stirflow.data.make_photo_crops (scikit-image's bundled images)",
                           seed=spec.get("seed", 0), num_classes=len(PHOTO_CLASSES), classes=list(PHOTO_CLASSES))
            log.info("%s/%s: %d images", name, split, len(labels))
        return
    from stirflow.public_datasets import prepare_public_dataset

    download = sm.params.download
    paths = prepare_public_dataset(name, spec, out_dir, download_dir=Path(sm.params.download_dir),
                                   mirror=download["mirror"], checksums=download["checksums"],
                                   retries=download["retries"], timeout=download["timeout"])
    log.info("%s: wrote %s", name, ", ".join(str(p) for p in paths))
    if kind == "cifar10_c":
        index = {Path(p).stem: str(Path(p).name) for p in paths}
        Path(sm.output.index).write_text(json.dumps(index, indent=1))


run_script(snakemake, main)  # noqa: F821 (snakemake is injected by the script directive)
