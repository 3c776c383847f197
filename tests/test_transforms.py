"""Study transforms, StudyDataset and collate_studies."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedmrg.data.dataset import StudyDataset, collate_studies
from fedmrg.data.images import save_dicom, save_png
from fedmrg.data.transforms import LoadStudyd, eval_transforms, train_transforms
from fedmrg.errors import DataError

SIZE = 32


def _disc(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.2 + 0.3 * yy / height
    return np.where((yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 4) ** 2, 0.9, image)


@pytest.fixture
def image_root(tmp_path):
    save_png(_disc(80, 60), tmp_path / "s1" / "frontal.png", bits=8)
    save_dicom(_disc(50, 90), tmp_path / "s1" / "lateral.dcm", photometric="MONOCHROME1", window=(2047.5, 4096.0))
    save_png(_disc(40, 40), tmp_path / "s2" / "frontal.png", bits=16)
    save_png(_disc(64, 64), tmp_path / "s3" / "view.png")
    return tmp_path


def _record(study_id: str, *paths: str) -> dict:
    return {"id": study_id, "report": f"report of {study_id}", "image_path": list(paths)}


TWO_VIEWS = _record("s1", "s1/frontal.png", "s1/lateral.dcm")
ONE_VIEW = _record("s2", "s2/frontal.png")
SAME_VIEW_TWICE = _record("s3", "s3/view.png", "s3/view.png")


def test_two_view_study_of_different_shapes(image_root):
    item = eval_transforms(SIZE, image_root)(TWO_VIEWS)
    image = item["image"]
    assert type(image) is torch.Tensor  # plain tensor, no MONAI metadata
    assert image.shape == (2, 1, SIZE, SIZE) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert item["num_views"] == 2 and item["id"] == "s1" and item["report"] == TWO_VIEWS["report"]


def test_letterbox_keeps_aspect_and_pads_symmetrically(tmp_path):
    save_png(np.ones((20, 40)), tmp_path / "wide.png")
    view = LoadStudyd(tmp_path, SIZE)(_record("w", "wide.png"))["image"][0]
    rows_with_content = np.flatnonzero(view.max(axis=1) > 0)
    assert (rows_with_content[0], rows_with_content[-1]) == (8, 23)  # 16 rows, 8 padded each side
    np.testing.assert_allclose(view[8:24], 1.0)


def test_absolute_paths_are_allowed(image_root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    record = _record("abs", str(image_root / "s2" / "frontal.png"))
    assert LoadStudyd(elsewhere, SIZE)(record)["image"].shape == (1, SIZE, SIZE)


@pytest.mark.parametrize("max_views", [1, 2])
def test_max_views_truncates(image_root, max_views):
    record = _record("s1", "s1/frontal.png", "s1/lateral.dcm", "s2/frontal.png")
    item = eval_transforms(SIZE, image_root, max_views=max_views)(record)
    assert item["image"].shape[0] == max_views == item["num_views"]


def test_eval_transforms_deterministic(image_root):
    transform = eval_transforms(SIZE, image_root)
    torch.testing.assert_close(transform(TWO_VIEWS)["image"], transform(TWO_VIEWS)["image"])


def _train_draws(image_root, seed: int, n: int = 6) -> list[torch.Tensor]:
    transform = train_transforms(SIZE, image_root)
    transform.set_random_state(seed)
    return [transform(TWO_VIEWS)["image"] for _ in range(n)]


def test_train_transforms_reproducible_and_augmenting(image_root):
    first, again = _train_draws(image_root, seed=0), _train_draws(image_root, seed=0)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    clean = eval_transforms(SIZE, image_root)(TWO_VIEWS)["image"]
    assert any(not torch.allclose(draw, clean) for draw in first)
    assert all(draw.min() >= 0 and draw.max() <= 1 and draw.shape == clean.shape for draw in first)


def test_train_without_augment_equals_eval(image_root):
    transform = train_transforms(SIZE, image_root, augment=False)
    torch.testing.assert_close(transform(TWO_VIEWS)["image"], eval_transforms(SIZE, image_root)(TWO_VIEWS)["image"])


def test_views_of_a_study_share_the_random_draw(image_root):
    """Two copies of one view stay equal up to the (per-pixel) noise, whatever affine is drawn."""
    transform = train_transforms(SIZE, image_root)
    transform.set_random_state(1)
    clean = eval_transforms(SIZE, image_root)(SAME_VIEW_TWICE)["image"][0]
    moved = 0
    for _ in range(12):
        first, second = transform(SAME_VIEW_TWICE)["image"]
        assert (first - second).abs().mean() < 0.02
        moved += int((first - clean).abs().mean() > 0.02)
    assert moved > 0  # the affine did act in some draws, so sharing it was exercised


def test_missing_view_names_study_and_path(image_root):
    record = _record("s9", "s1/frontal.png", "s9/missing.png")
    with pytest.raises(DataError, match=r"study 's9': .*s9/missing\.png: image file not found"):
        eval_transforms(SIZE, image_root)(record)


def test_study_without_views(image_root):
    with pytest.raises(DataError, match=r"study 'empty': no image views"):
        eval_transforms(SIZE, image_root)(_record("empty"))


def test_dataset_resolves_paths_and_keeps_record_keys(image_root, tmp_path_factory):
    records = [TWO_VIEWS, ONE_VIEW]
    # the transform's own root is irrelevant once the dataset resolved the paths
    dataset = StudyDataset(records, image_root, eval_transforms(SIZE, tmp_path_factory.mktemp("other")))
    item = dataset[1]
    assert item["image"].shape == (1, 1, SIZE, SIZE)
    assert (item["id"], item["report"]) == ("s2", ONE_VIEW["report"])
    assert ONE_VIEW["image_path"] == ["s2/frontal.png"]  # input records untouched


def test_collate_pads_views(image_root):
    dataset = StudyDataset([ONE_VIEW, TWO_VIEWS], image_root, eval_transforms(SIZE, image_root))
    batch = collate_studies([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 2, 1, SIZE, SIZE)
    assert batch["view_mask"].dtype == torch.bool
    assert batch["view_mask"].tolist() == [[True, False], [True, True]]
    assert batch["num_views"].dtype == torch.long and batch["num_views"].tolist() == [1, 2]
    assert not batch["image"][0, 1].any()  # padding view is zeros
    torch.testing.assert_close(batch["image"][1], dataset[1]["image"])
    assert batch["id"] == ["s2", "s1"] and batch["report"] == [ONE_VIEW["report"], TWO_VIEWS["report"]]


def test_dataloader_with_collate(image_root):
    dataset = StudyDataset([TWO_VIEWS, ONE_VIEW, SAME_VIEW_TWICE], image_root, train_transforms(SIZE, image_root))
    loader = DataLoader(dataset, batch_size=2, num_workers=0, collate_fn=collate_studies)
    batches = list(loader)
    assert [b["image"].shape[:2] for b in batches] == [(2, 2), (1, 2)]
    assert batches[0]["view_mask"].tolist() == [[True, True], [True, False]]


def test_dataset_surfaces_data_error(image_root):
    dataset = StudyDataset([_record("s9", "s9/missing.png")], image_root, eval_transforms(SIZE, image_root))
    with pytest.raises(DataError, match=r"study 's9': .*missing\.png"):
        dataset[0]
