"""Operations: a local FLARE POC federation driver and a hospital's pre-flight check (``site-check``)."""
