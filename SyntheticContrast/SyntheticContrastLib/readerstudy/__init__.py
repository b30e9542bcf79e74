"""Reader studies: blinded sessions, figures of merit, and the Obuchowski-Rockette-Hillis analysis that says
whether modalities differ, with RJafroc's Excel format in and out."""
