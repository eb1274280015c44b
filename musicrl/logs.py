"""Console hygiene for the CLI: transformers' load-time chatter hides our own progress and errors."""


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
