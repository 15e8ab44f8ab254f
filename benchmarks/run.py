"""All benchmarks, one command: `make benchmark`."""

from benchmarks import ingest, model

if __name__ == "__main__":
    model.main()
    ingest.main()
