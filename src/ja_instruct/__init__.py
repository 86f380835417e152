"""ja-instruct: instruction-tune Japanese LLMs and measure them with an LLM judge."""
__version__ = "0.1.0"
