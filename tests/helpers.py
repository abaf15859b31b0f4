"""Small shared builders for the tests."""
import torch

SMALL = {"pyramid": 32, "regression": 32, "classification": 32}


def tiny_model(cls, classes=3, **kwargs):
    """A small, randomly initialised detector that runs in milliseconds on the CPU."""
    options = dict(resnet=18, features=SMALL, pretrained=False, head_convs=1)
    if cls.__name__ == "DLDENetWithTrackedMeans":
        options["embedding_size"] = 8
    options.update(kwargs)
    return cls(classes, **options)


def batch_annotations():
    """Two images: one with a padded row, one with two objects; labels in 0..2."""
    return torch.tensor([[[10.0, 10.0, 50.0, 50.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]],
                         [[20.0, 30.0, 60.0, 62.0, 2.0], [5.0, 5.0, 14.0, 14.0, 1.0]]])


def free_port():
    """A TCP port of 127.0.0.1 free at this instant (for a gloo process group's MASTER_PORT)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
