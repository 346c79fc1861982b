"""Training data: image lists, insightface RecordIO, synthetic data, the sampler and the loader."""
from dataloader.builder import (
    BadCount,
    BadSampleCounter,
    build_train_dataset,
    build_train_loader,
    collate_faces,
)
from dataloader.image_list import ImageListDataset, TrainList, read_train_list
from dataloader.rec_dataset import RecordIODataset
from dataloader.recordio import RecordIOWriter, pack_payload, read_idx, unpack_payload
from dataloader.sampler import EpochShuffleSampler
from dataloader.synthetic import SyntheticDataset, TensorImageDataset
from dataloader.transforms import BadSample, BadSampleError, decode_face, to_chw_tensor

__all__ = [
    "BadCount",
    "BadSample",
    "BadSampleCounter",
    "BadSampleError",
    "EpochShuffleSampler",
    "ImageListDataset",
    "RecordIODataset",
    "RecordIOWriter",
    "SyntheticDataset",
    "TensorImageDataset",
    "TrainList",
    "build_train_dataset",
    "build_train_loader",
    "collate_faces",
    "decode_face",
    "pack_payload",
    "read_idx",
    "read_train_list",
    "to_chw_tensor",
    "unpack_payload",
]
