from jira_mirror_cli import main

main()
