"""`weitiao ui`: a local web console to configure, launch, watch, compare and chat (zh/en)."""
