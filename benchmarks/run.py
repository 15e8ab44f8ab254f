"""All benchmarks, one command: `make benchmark`."""

from benchmarks import ingest, model, web

if __name__ == "__main__":
    model.main()
    ingest.main()
    web.main()
