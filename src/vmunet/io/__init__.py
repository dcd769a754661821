"""File formats: the header checks every reader runs (``limits``); the format readers move here later."""
