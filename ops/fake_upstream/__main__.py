"""``python -m ops.fake_upstream``: the same as ``python -m compass.upstream.demo``."""

from compass.upstream.demo.__main__ import main

if __name__ == "__main__":
    main()
