FROM python:3.11-slim
WORKDIR /app
COPY . .
# The image runs the migrations, the workers (and Flower) and the HTTP service.
RUN pip install --no-cache-dir '.[server]'
USER nobody
