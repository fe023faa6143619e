"""Selection of the library that runs neighbour search and k-means."""

import importlib

BACKENDS = ("auto", "faiss", "tensorflow")


def import_faiss():
    """Import and return the `faiss` module; raises ImportError when it is not installed.

    Kept as a module-level function so that tests can replace it to simulate a machine
    without faiss.
    """
    return importlib.import_module("faiss")


def resolve_backend(backend: str) -> str:
    """Map `backend` to "faiss" or "tensorflow".

    "auto" picks faiss when it can be imported and TensorFlow otherwise. "faiss" raises
    ImportError when faiss is missing instead of falling back silently.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "tensorflow":
        return "tensorflow"
    try:
        import_faiss()
    except ImportError as error:
        if backend == "faiss":
            raise ImportError(
                "backend='faiss' was requested but faiss cannot be imported "
                f"({error}); install faiss-cpu or pass backend='tensorflow'"
            ) from error
        return "tensorflow"
    return "faiss"
