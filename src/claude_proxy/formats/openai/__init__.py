"""OpenAI's Chat Completions shapes, as the Anthropic API's compatible endpoint serves them."""
