"""The real ``qsecret chat`` and ``qsecret demo`` binaries driven through tmux."""
