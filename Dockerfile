# jira-mirror as a container: the same build as Heroku's (pip install -r requirements.txt, then
# the Procfile's commands from the source tree), so one image runs every process type:
#   docker build -t jira-mirror .
#   docker run --env-file .env jira-mirror web        # or worker, backfill, clock, release
# The source tree is kept (not `pip install .`) so that the bundled Jira simulator, a
# development tool left out of the package, runs from it too (compose.yaml's demo).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/jira-mirror.db

WORKDIR /app
# Dependencies first: their layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# A user without privileges; it owns only /data (a SQLite file for a one-container trial:
# use PostgreSQL, DATABASE_URL, for anything with more than one process).
RUN useradd --system --uid 10001 --no-create-home mirror \
    && mkdir /data && chown mirror /data
USER mirror
VOLUME /data
EXPOSE 8000

ENTRYPOINT ["scripts/docker-entrypoint.sh"]
CMD ["web"]
