"""The day-2 commands, each a package: replay, audit and doctor. They never import each
other; what they share is here: progress lines, a token bucket, aligned text tables."""
