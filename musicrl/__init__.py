"""musicrl: align text-to-music models with rewards and people's votes (MusicRL, arXiv 2402.04229)."""

__version__ = "0.1.0"
