"""zvonok-agi: caller-ID numbers for a voice auto-dialer and routing of the calls that come back."""

__version__ = "0.1.0"
