-- The functions and views stay as the folder left them; the next migrate re-applies the folder.
DROP TABLE ledger_definitions;
