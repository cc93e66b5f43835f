"""freshrec.embeddings"""
