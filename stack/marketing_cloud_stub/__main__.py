"""``python -m stack.marketing_cloud_stub [--host HOST] [--port PORT]``: serves the stub."""

from .app import main

if __name__ == "__main__":
    main()
